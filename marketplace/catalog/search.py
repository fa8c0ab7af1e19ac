"""Free-text search over the catalog that understands what people type, best match first.

The query is read word by word, and every word must match the card (AND across words):

1. A language's English name ("japanese", "Norwegian Bokmål") matches the cards whose languages list that
   language's code, or say only `mul` (multilingual, no list): those rank below the cards that list it.
2. A size ("7b", "1.7B", "135m") matches the size a card's name states, as a whole word: "7b" finds
   "Mistral 7B", never "Gemma 2 27B" nor "SmolLM2 1.7B". A card whose name states no size matches when its
   parameter count, rounded to the query's precision, is that size ("15b" finds Phi-4, 14.7B).
3. Any other word is looked up with PostgreSQL full-text search, as a prefix ("qwen" finds "Qwen2.5") in
   a document weighted by where the word stands: A name, slug and family; B provider, repository and
   tasks; C tags, domains, input modalities and license; D the summary. The word's English stem is
   looked up as a prefix too, so "embeddings" finds "embedding" and "medical" finds "medicine". A word
   of four letters or more that matches no card that way may still match by trigram similarity (pg_trgm,
   already installed for the catalog's trigram index), so a typo ("mistrl") still finds the model.
   English stop words ("for", "the") are dropped rather than required.

Ranking: `ts_rank` of the weighted document (a word in the name counts most; a whole word counts again
over a prefix), plus a bonus when the name starts with what was typed (as whole words) and when a card
lists a searched language itself rather than only `mul`; typo matches are found but not ranked.

Cost: the document is stored in `ModelCard.search_vector` (a tsvector with a GIN index), written when a
card, its provider or its license is saved (ModelCardQuerySet.refresh_search_vectors, one UPDATE for any
number of cards), so a search reads the index instead of building every card's document: at a thousand
cards a search is a few milliseconds again (bench/catalog.py, bench/catalog_page.py). The page and the
REST API's `q` both search here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from babel import Locale
from django.contrib.postgres.search import (
    SearchQuery,
    SearchRank,
    SearchVector,
)
from django.db import connection
from django.db.models import (
    Case,
    F,
    FloatField,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    TextField,
    Value,
    When,
)
from django.db.models.expressions import CombinedExpression

from marketplace.catalog.models import ModelCard

# What splits a name into the words people type: "Qwen/Qwen2.5-7B-Instruct" → "Qwen Qwen2.5 7B Instruct".
SEPARATORS = r"[-/_:,()]+"
SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bm])$")
# A size stated in a slug, as a whole word ("mixtral-8x7b" states 8x7b, not 7b).
SLUG_SIZE = r"(^|[^0-9a-z.])\d+(\.\d+)?[bm]([^0-9a-z]|$)"
MULTILINGUAL = "mul"
TRIGRAM_MIN_LENGTH = 4


@cache
def _english_names() -> dict[str, str]:
    return dict(Locale("en").languages)


def language_name(code: str) -> str:
    """ "Japanese" for "ja"; the code itself when CLDR does not name it."""
    base = code.split("-")[0]
    return _english_names().get(code) or _english_names().get(base) or code


def language_label(code: str) -> str:
    """What a facet shows: "Japanese (ja)"."""
    return f"{language_name(code)} ({code})"


@cache
def _codes_by_name() -> dict[str, str]:
    """Lower-cased English language names → ISO 639 code (the two-letter code where there is one)."""
    names: dict[str, str] = {}
    by_length = sorted(_english_names().items(), key=lambda item: (len(item[0]), item[0]), reverse=True)
    for code, name in by_length:
        names[name.lower()] = code  # shorter codes last, so they win ("ja" over "jpn")
    return names


@dataclass
class ParsedQuery:
    words: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)  # "7b", "1.7b", "135m"
    languages: list[str] = field(default_factory=list)
    text: str = ""


def parse(text: str) -> ParsedQuery:
    """Split what was typed into language names, sizes and words (see the module docstring)."""
    normalized = re.sub(SEPARATORS, " ", text.lower())
    tokens = [re.sub(r"[^\w.]+", "", token).strip(".") for token in normalized.split()]
    tokens = [token for token in tokens if token]
    names = _codes_by_name()
    parsed = ParsedQuery(text=" ".join(tokens))
    index = 0
    while index < len(tokens):
        pair = " ".join(tokens[index : index + 2])
        if index + 1 < len(tokens) and pair in names:
            parsed.languages.append(names[pair])
            index += 2
            continue
        token = tokens[index]
        if token in names:
            parsed.languages.append(names[token])
        elif SIZE.match(token):
            parsed.sizes.append(token)
        else:
            parsed.words.append(token)
        index += 1
    return parsed


def _words(expression: object) -> Func:
    """A text column with its separators turned into spaces, so each part is a word of its own."""
    return Func(
        expression,
        Value(SEPARATORS),
        Value(" "),
        Value("g"),
        function="regexp_replace",
        output_field=TextField(),
    )


def _joined(array_field: str) -> Func:
    return _words(Func(F(array_field), Value(" "), function="array_to_string", output_field=TextField()))


def document() -> CombinedExpression:
    return (
        SearchVector(_words(F("name")), _words(F("slug")), "family", config="simple", weight="A")
        + SearchVector(
            "provider__name",
            "provider__slug",
            _words(F("huggingface_repo")),
            _joined("tasks"),
            config="simple",
            weight="B",
        )
        + SearchVector(
            _joined("tags"),
            _joined("domains"),
            _joined("modalities_in"),
            "license__identifier",
            config="simple",
            weight="C",
        )
        + SearchVector("summary", config="simple", weight="D")
    )


def stored_document() -> Subquery:
    """Each card's document (above), for an UPDATE of `search_vector`: a subquery, since an UPDATE
    cannot join the provider and the license itself."""
    cards = ModelCard.every_card.filter(pk=OuterRef("pk")).annotate(document=document())
    return Subquery(cards.values("document")[:1])


def _word_query(word: str, *, prefix: bool = True) -> SearchQuery:
    # The word holds only letters, digits, "_" and inner dots (see parse), so it is safe as a raw lexeme.
    lexeme = f"'{word}'{':*' if prefix else ''}"
    # The English stem as a prefix too: "embeddings" → embed:* finds the task "embedding".
    return SearchQuery(lexeme, search_type="raw", config="simple") | SearchQuery(
        lexeme, search_type="raw", config="english"
    )


def _any_of(queries: list[SearchQuery]) -> SearchQuery:
    combined = queries[0]
    for query in queries[1:]:
        combined = combined | query
    return combined


def _size_q(token: str) -> Q:
    """The card's name states this size, or states none and its parameter count rounds to it."""
    match = SIZE.match(token)
    assert match is not None
    number, unit = match.groups()
    stated = Q(slug__iregex=rf"(^|[^0-9a-z.]){re.escape(number)}{unit}([^0-9a-z]|$)")
    scale = 1_000_000_000 if unit == "b" else 1_000_000
    step = 10 ** -len(number.split(".")[1]) if "." in number else 1
    low, high = (float(number) - step / 2) * scale, (float(number) + step / 2) * scale
    counted = ~Q(slug__iregex=SLUG_SIZE) & Q(parameters__gte=low, parameters__lt=high)
    return stated | counted


def _kept_words(words: list[str]) -> dict[str, bool]:
    """The words PostgreSQL's English dictionary keeps ("for", "the", "with" would each have to match), in
    order, each with whether any card's stored document matches it (else it may be a typo). One query."""
    if not words:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT word, EXISTS (SELECT 1 FROM catalog_modelcard WHERE search_vector @@ "
            "(to_tsquery('simple', quote_literal(word) || ':*') || to_tsquery('english', quote_literal(word) "
            "|| ':*'))) FROM unnest(%s::text[]) WITH ORDINALITY AS typed(word, position) "
            "WHERE to_tsvector('english', word) <> ''::tsvector ORDER BY position",
            [words],
        )
        return dict(cursor.fetchall())


def search(queryset: QuerySet[ModelCard], text: str) -> QuerySet[ModelCard]:
    """The cards that match every word of `text`, annotated with `search_rank` (higher is better)."""
    parsed = parse(text)
    found = _kept_words(parsed.words)
    parsed.words = list(found)
    if not (parsed.words or parsed.sizes or parsed.languages):
        return queryset.annotate(search_rank=Value(0.0, output_field=FloatField()))
    vector = F("search_vector")
    rank: object = Value(0.0, output_field=FloatField())
    prefixes, wholes = [], []
    for word in parsed.words:
        query = _word_query(word)
        prefixes.append(query)
        wholes.append(_word_query(word, prefix=False))
        condition = Q(search_vector=query)
        if len(word) >= TRIGRAM_MIN_LENGTH and not found[word]:
            # pg_trgm's word-similarity operator (threshold pg_trgm.word_similarity_threshold, 0.6 unless
            # set): a typo match is found, not ranked, so typo matches keep the sort's tie-break (name).
            condition |= Q(search_text__trigram_word_similar=word)
        queryset = queryset.filter(condition)
    if parsed.words:
        # The words as typed count again where they are whole words of the card ("llama" before "llama3").
        rank = rank + SearchRank(vector, _any_of(prefixes)) + SearchRank(vector, _any_of(wholes))  # type: ignore[operator]
    for token in parsed.sizes:
        queryset = queryset.filter(_size_q(token))
        rank = rank + Value(0.5)  # type: ignore[operator]
    for code in parsed.languages:
        queryset = queryset.filter(Q(languages__contains=[code]) | Q(languages__contains=[MULTILINGUAL]))
        rank = rank + Case(  # type: ignore[operator]
            When(languages__contains=[code], then=Value(0.5)), default=Value(0.0), output_field=FloatField()
        )
    if parsed.text:
        rank = rank + Case(  # type: ignore[operator]
            When(name__iregex=rf"^{re.escape(parsed.text)}([^0-9a-z]|$)", then=Value(1.0)),
            default=Value(0.0),
            output_field=FloatField(),
        )
    return queryset.annotate(search_rank=rank)
