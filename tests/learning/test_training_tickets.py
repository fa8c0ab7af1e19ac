"""The stand-in task teacher of the distillation proof, and the task scorers its students are judged by:
tickets with known fields, a teacher that reads only the text and gets them right, JSON validity,
per-field exact match and agreement with the teacher."""

from __future__ import annotations

import json

from learning.training import tickets
from learning.training.task_scoring import field_matches, parse_object, score_answers


def test_the_same_seed_makes_the_same_tickets_and_another_seed_others() -> None:
    assert tickets.make_tickets(20, seed=3) == tickets.make_tickets(20, seed=3)
    assert tickets.make_tickets(20, seed=3) != tickets.make_tickets(20, seed=4)


def test_every_category_priority_and_product_occurs_in_a_small_set() -> None:
    made = tickets.make_tickets(60, seed=0)
    assert {t.category for t in made} == set(tickets.CATEGORIES)
    assert {t.priority for t in made} == set(tickets.PRIORITIES)
    assert {t.product for t in made} == set(tickets.PRODUCTS)


def test_the_teacher_reads_the_known_fields_from_the_text_alone() -> None:
    made = tickets.make_tickets(500, seed=11)
    assert [tickets.teacher_fields(t.text) for t in made] == [t.truth for t in made]


def test_the_teacher_maps_what_customers_call_a_product_to_its_name() -> None:
    answer = tickets.teacher_fields("The photo backup app crashes on start. No rush. - Sam")
    assert answer == {"category": "technical", "priority": "low", "product": "PhotoVault"}


def test_the_teacher_answers_the_json_object_alone() -> None:
    answer = tickets.teacher_answer("I was charged twice for TaskBoard. Please look at this today.")
    assert json.loads(answer) == {"category": "billing", "priority": "high", "product": "TaskBoard"}


def test_the_student_is_asked_the_bare_ticket_and_the_teacher_with_its_instructions() -> None:
    ticket = tickets.make_tickets(1)[0]
    rows = tickets.training_rows([ticket])
    assert rows == [{"prompt": ticket.text, "answer": tickets.teacher_answer(ticket.text)}]
    system, user = tickets.teacher_messages(ticket)
    assert system["content"] == tickets.INSTRUCTIONS and user["content"] == ticket.text
    assert all(name in tickets.INSTRUCTIONS for name in (*tickets.CATEGORIES, *tickets.PRODUCTS))


def test_an_answer_is_json_when_it_is_one_object_even_in_a_code_fence() -> None:
    assert parse_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_object("[1, 2]") is None
    assert parse_object('Sure! {"a": 1}') is None


def test_fields_match_only_when_equal_to_the_reference() -> None:
    reference = {"category": "billing", "priority": "high", "product": "TaskBoard"}
    answer = '{"category": "billing", "priority": "High", "product": "TaskBoard"}'
    assert field_matches(answer, reference, tickets.FIELDS) == {
        "category": True,
        "priority": False,
        "product": True,
    }
    assert not any(field_matches("not json", reference, tickets.FIELDS).values())


def test_scores_are_fractions_of_the_answers() -> None:
    made = tickets.make_tickets(4, seed=1)
    teacher = [tickets.teacher_answer(t.text) for t in made]
    wrong_priority = {**made[1].truth, "priority": "urgent" if made[1].priority != "urgent" else "low"}
    answers = [teacher[0], json.dumps(wrong_priority), "I think it is billing.", teacher[3]]
    scores = score_answers(answers, [t.truth for t in made], teacher, tickets.FIELDS)
    assert scores.json_validity == 0.75
    assert scores.field_accuracy == {"category": 0.75, "priority": 0.5, "product": 0.75}
    assert scores.teacher_agreement == 0.5
