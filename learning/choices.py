"""Named constants of datasets and evaluations."""

from __future__ import annotations

from django.db import models


class DatasetSource(models.TextChoices):
    UPLOAD = "upload", "Uploaded"
    LOGS = "logs", "From invocation logs"


class DatasetPart(models.TextChoices):
    ALL = "all", "All records"
    TRAIN = "train", "Train part"
    HELDOUT = "heldout", "Held-out part"


class EvaluationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# Statuses an evaluation never leaves.
FINISHED_STATUSES = (EvaluationStatus.SUCCEEDED, EvaluationStatus.FAILED, EvaluationStatus.CANCELLED)


class ScorerKind(models.TextChoices):
    EXACT_MATCH = "exact_match", "Exact match"
    REGEX = "regex", "Regular expression"
    JSON = "json", "Valid JSON"
    SIMILARITY = "similarity", "Cosine similarity to the reference"
    JUDGE = "judge", "LLM as judge"
