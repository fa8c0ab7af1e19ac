"""The fixed word lists of guardrails: the profanity list and the prompt-attack patterns.

Profanity: no maintained list package is both small and plainly licensed for redistribution here (the
candidates are ML classifiers with a model file, or lists without a stated licence), so this is a short
list of our own: the English swear words that top the frequency counts of Timothy Jay's studies of
public swearing ("The utility and ubiquity of taboo words", Perspectives on Psychological Science, 2009),
with their common inflections. Matched as whole words, case-insensitively, like custom words.

Prompt attacks (input only): phrasings of instruction override ("ignore all previous instructions"),
role-play jailbreaks ("you are DAN", "pretend you have no restrictions", "developer mode"), and
system-prompt extraction ("repeat your system prompt", "what were your instructions"). Known limits: a
list of phrasings catches the copied, well-known attacks and their close variants, in English only; a
paraphrase, another language, an encoding (base64, leetspeak, spaced letters), an attack split across
turns or hidden in a document the model reads are not caught, and a sentence that quotes an attack to
discuss it is caught. It is a tripwire against the common case, not a defence to rely on alone.
"""

from __future__ import annotations

PROFANITY = (
    "fuck", "fucking", "fucked", "fucker", "motherfucker", "shit", "shitty", "bullshit", "asshole",
    "bitch", "bitches", "bastard", "cunt", "dick", "dickhead", "prick", "twat", "wanker", "piss off",
    "pissed off", "son of a bitch", "goddamn", "damn it", "jackass", "douchebag", "slut", "whore",
)  # fmt: skip

# (name, substrings one of which every match contains (lower case), regular expression). The substrings
# are a cheap first test: the expression runs only on a text that contains one of them.
PROMPT_ATTACKS = (
    (
        "instruction override",
        ("ignore", "disregard", "forget", "override", "bypass"),
        r"\b(?:ignore|disregard|forget|override|bypass)\b(?:\W+\w+){0,3}?\W+"
        r"(?:previous|prior|above|earlier|preceding|all|any|your|the|system)\W+"
        r"(?:\w+\W+){0,2}(?:instructions?|rules|prompts?|guidelines|directions|constraints|policies)\b",
    ),
    (
        "new instructions",
        ("from now on", "starting now", "henceforth"),
        r"\b(?:from now on|starting now|henceforth),? you (?:will|must|shall|are going to) "
        r"(?:ignore|disregard|only obey|answer without|respond without)\b",
    ),
    (
        "role-play jailbreak",
        ("dan", "stan", "dude", "aim", "jailb", "unfilter", "uncensor", "unrestrict", "evil", "anything now",
         " mode", "pretend", "without any"),
        r"\b(?:you are|you're|act as|pretend to be|roleplay as|role-play as)\s+(?:now\s+)?(?:a |an )?"
        r"(?:dan|stan|dude|aim|jailbroken|unfiltered|uncensored|unrestricted|evil)\b"
        r"|\bdo anything now\b"
        r"|\b(?:developer|god|jailbreak|unrestricted|dan) mode\b"
        r"|\bpretend (?:that )?you (?:have|had) no (?:restrictions|rules|guidelines|filters|limits)\b"
        r"|\bwithout any (?:restrictions|filters|censorship|moral|ethical)\b",
    ),
    (
        "system prompt extraction",
        ("prompt", "instructions"),
        r"\b(?:repeat|print|reveal|show|output|tell me|display|leak|give me)\b(?:\W+\w+){0,3}?\W+"
        r"(?:system prompt|initial prompt|hidden prompt|(?:original |initial |hidden |system )instructions)\b"
        r"|\bwhat (?:are|were) your (?:initial |original |hidden |system )?instructions\b",
    ),
)  # fmt: skip
