"""`load_catalog`: valid data loads, re-running updates in place, and bad data is refused whole."""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.db import DatabaseError

from marketplace.catalog.loader import DATA_DIR, load_catalog
from marketplace.catalog.models import (
    InstanceType,
    License,
    ModelCard,
    Provider,
    search_vectors_refreshed_once,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A private copy of the real catalog to break."""
    copy = tmp_path / "data"
    shutil.copytree(DATA_DIR, copy)
    return copy


def counts() -> tuple[int, int, int, int]:
    return (
        ModelCard.objects.count(),
        Provider.objects.count(),
        InstanceType.objects.count(),
        License.objects.count(),
    )


def edit(path: Path, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_rerunning_changes_nothing_and_duplicates_nothing(data: Path) -> None:
    before = counts()
    call_command("load_catalog", path=data)
    call_command("load_catalog", path=data)
    assert counts() == before


def test_an_edited_card_is_updated_in_place(data: Path) -> None:
    edit(data / "models/meta.yaml", lambda d: d["models"][0].update(summary="Edited summary."))
    slug = yaml.safe_load((data / "models/meta.yaml").read_text())["models"][0]["slug"]
    before = counts()
    call_command("load_catalog", path=data)
    assert ModelCard.objects.get(slug=slug).summary == "Edited summary."
    assert counts() == before


def test_a_new_card_is_added(data: Path) -> None:
    def add(document: dict) -> None:  # type: ignore[type-arg]
        card = dict(document["models"][0], slug="llama-test-copy", huggingface_repo="meta-llama/Test-Copy")
        document["models"].append(card)

    edit(data / "models/meta.yaml", add)
    before = ModelCard.objects.count()
    call_command("load_catalog", path=data)
    assert ModelCard.objects.count() == before + 1


def refused(data: Path) -> str:
    """Runs the loader expecting a refusal; checks nothing was written; returns the message."""
    before = counts()
    ModelCard.objects.update(summary="marker")
    with pytest.raises(CommandError) as error:
        call_command("load_catalog", path=data)
    assert counts() == before
    assert not ModelCard.objects.exclude(summary="marker").exists()
    return str(error.value)


def test_a_wrong_type_names_the_file_card_and_field(data: Path) -> None:
    edit(data / "models/meta.yaml", lambda d: d["models"][1].update(context_length="very long"))
    slug = yaml.safe_load((data / "models/meta.yaml").read_text())["models"][1]["slug"]
    message = refused(data)
    assert f"models/meta.yaml: card '{slug}': field 'context_length'" in message


def test_a_missing_field_is_refused(data: Path) -> None:
    edit(data / "models/qwen.yaml", lambda d: d["models"][0].pop("parameters"))
    assert "field 'parameters': Field required" in refused(data)


def test_an_unknown_task_is_refused(data: Path) -> None:
    edit(data / "models/google.yaml", lambda d: d["models"][0].update(tasks=["chat", "telepathy"]))
    assert "field 'tasks.1'" in refused(data)


def test_an_unknown_field_is_refused(data: Path) -> None:
    edit(data / "models/google.yaml", lambda d: d["models"][0].update(colour="blue"))
    assert "field 'colour': Extra inputs are not permitted" in refused(data)


def test_a_negative_parameter_count_is_refused(data: Path) -> None:
    edit(data / "models/google.yaml", lambda d: d["models"][0].update(parameters=-5))
    assert "field 'parameters'" in refused(data)


def test_a_duplicate_slug_across_files_is_refused(data: Path) -> None:
    meta_slug = yaml.safe_load((data / "models/meta.yaml").read_text())["models"][0]["slug"]
    edit(data / "models/google.yaml", lambda d: d["models"][0].update(slug=meta_slug))
    assert "also used in" in refused(data)


def test_an_unknown_license_is_refused(data: Path) -> None:
    edit(data / "models/google.yaml", lambda d: d["models"][0].update(license="made-up-license"))
    assert "'made-up-license' is not in licenses.yaml" in refused(data)


def test_broken_yaml_is_refused_naming_the_file(data: Path) -> None:
    (data / "models/ibm.yaml").write_text("provider: [unclosed\n")
    assert "models/ibm.yaml: not valid YAML" in refused(data)


def test_a_bad_instance_type_names_it(data: Path) -> None:
    edit(data / "instance_types.yaml", lambda d: d["instance_types"][0].update(gpu_count="eight"))
    slug = yaml.safe_load((data / "instance_types.yaml").read_text())["instance_types"][0]["slug"]
    assert f"instance_types.yaml: instance type '{slug}': field 'gpu_count'" in refused(data)


def test_a_file_whose_provider_slug_differs_from_its_name_is_refused(data: Path) -> None:
    edit(data / "models/ibm.yaml", lambda d: d["provider"].update(slug="not-ibm"))
    assert "must match the file name 'ibm'" in refused(data)


def test_check_mode_writes_nothing(data: Path) -> None:
    edit(data / "models/meta.yaml", lambda d: d["models"][0].update(summary="Changed."))
    call_command("load_catalog", path=data, check=True)
    assert not ModelCard.objects.filter(summary="Changed.").exists()


def test_a_failure_midway_through_writing_leaves_the_catalog_as_it_was(data: Path, monkeypatch) -> None:
    """All-or-nothing beyond validation: the database refusing the 40th card undoes the first 39."""
    edit(data / "models/meta.yaml", lambda d: [card.update(summary="changed") for card in d["models"]])
    before = counts()
    ModelCard.objects.update(summary="marker")
    original_save = ModelCard.save
    saved = []

    def failing_save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        saved.append(self.slug)
        if len(saved) == 40:
            raise DatabaseError("disk full")
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(ModelCard, "save", failing_save)
    with pytest.raises(DatabaseError):
        load_catalog(data)
    assert len(saved) == 40  # it did write cards before failing
    assert counts() == before
    assert not ModelCard.objects.exclude(summary="marker").exists()


def test_loading_stores_each_card_s_search_document_as_saving_that_card_alone_does() -> None:
    """The loader stores every search document in one UPDATE at the end instead of one per save."""
    ModelCard.objects.update(search_vector=None)
    load_catalog()
    loaded = dict(ModelCard.objects.values_list("slug", "search_vector"))
    assert all(loaded.values())
    for card in ModelCard.objects.order_by("slug")[:10]:
        card.save()
    saved_alone = dict(ModelCard.objects.order_by("slug").values_list("slug", "search_vector")[:10])
    assert saved_alone == {slug: loaded[slug] for slug in saved_alone}


def test_a_failure_while_loading_does_not_leave_saves_without_their_search_document() -> None:
    with pytest.raises(RuntimeError), search_vectors_refreshed_once():
        raise RuntimeError("a failure halfway through a load")
    card = ModelCard.objects.order_by("slug").first()
    assert card is not None
    ModelCard.objects.filter(pk=card.pk).update(search_vector=None)
    card.save()
    assert ModelCard.objects.get(pk=card.pk).search_vector
