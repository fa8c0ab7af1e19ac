"""Invocation logging: what an organisation chose to keep of its traffic, and the index of what is kept.

The records themselves live in the object store (learning.storage) as gzip-compressed JSON Lines, one
object per organisation, deployment and few minutes; PostgreSQL holds only the settings a person edits
and one index row per object, to find objects by time and deployment without listing the store.

A record (one line of an object) is a JSON object with these fields (`learning.records.parse_record`
checks them):
    id                       the gateway's request id (hex, ≤ 64 characters), unique per invocation
    time                     ISO 8601 with offset: when the request arrived
    organization_id          the caller's organisation
    key_prefix               the API key's visible prefix (`mk-abcdefgh`), null for the web playground
    deployment_id, deployment   the deployment that answered (id may be null once it is deleted) and its name
    route                    `openai.chat`, `openai.completions`, `openai.embeddings`, `bedrock.converse`…
    request                  the request as sent to the engine (JSON), or null when bodies are not kept
    answer                   the answer (JSON; a stream assembled, with its usage and finish reason), or null
    tokens                   {"prompt": int, "completion": int}
    latency_ms               time to the last byte
    time_to_first_token_ms   null when not streamed
    status                   the HTTP status the caller got
    masked                   how many pieces of personal data were replaced (0 when masking is off)
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from learning.choices import DatasetPart, DatasetSource, EvaluationStatus
from marketplace.accounts.models import Organization

MAX_RETENTION_DAYS = 3650
DEFAULT_RETENTION_DAYS = 30


class InvocationLogSettings(models.Model):
    """One per organisation; absent means logging is off. Narrowing lists hold names people see (a
    deployment's name, a key's prefix) so that a deleted deployment narrows to nothing rather than
    silently widening to everything."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="invocation_log_settings"
    )
    enabled = models.BooleanField(default=False)
    deployments = models.JSONField(
        default=list, blank=True, help_text="Names of the deployments to log; empty: all of them"
    )
    api_keys = models.JSONField(
        default=list, blank=True, help_text="Prefixes of the API keys to log (mk-…); empty: all of them"
    )
    sample_rate = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of matching invocations to keep, 0 to 1",
    )
    keep_requests = models.BooleanField(default=True, help_text="Keep the request sent to the engine")
    keep_answers = models.BooleanField(default=True, help_text="Keep the engine's answer")
    retention_days = models.PositiveIntegerField(
        default=DEFAULT_RETENTION_DAYS,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_RETENTION_DAYS)],
    )
    mask_personal_data = models.BooleanField(
        default=True, help_text="Replace e-mail addresses, phone, card and IBAN numbers, IP addresses"
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name_plural = "invocation log settings"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(sample_rate__gte=0) & models.Q(sample_rate__lte=1),
                name="log_sample_rate_0_to_1",
            ),
            models.CheckConstraint(
                condition=models.Q(retention_days__gte=1) & models.Q(retention_days__lte=MAX_RETENTION_DAYS),
                name="log_retention_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"Invocation logging of {self.organization} ({'on' if self.enabled else 'off'})"


class InvocationLogObject(models.Model):
    """The index row of one object of records. The object is written before its row, and rows are
    upserted by key, so a writer that dies in between leaves at worst an object the next run indexes."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invocation_log_objects"
    )
    deployment = models.ForeignKey(
        "serving.Deployment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="invocation_log_objects",
    )
    deployment_name = models.CharField(max_length=40, blank=True)
    key = models.CharField(max_length=300, unique=True, help_text="The object's key in the store")
    first_at = models.DateTimeField(help_text="Time of the object's earliest record")
    last_at = models.DateTimeField(help_text="Time of the object's latest record")
    records = models.PositiveIntegerField()
    bytes = models.PositiveBigIntegerField(help_text="Compressed size")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-first_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "first_at"], name="log_object_org_time"),
            models.Index(fields=["last_at"], name="log_object_last_at"),
        ]

    def __str__(self) -> str:
        return self.key


class Dataset(models.Model):
    """One version of a named dataset: an immutable list of records in one object of the store (see
    learning.datasets for a record's fields), and this index row. A new upload under the same name is a
    new version; nothing edits a version once written. The object is written before the row, so a row
    always names an object that exists."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=60)
    version = models.PositiveIntegerField()
    description = models.CharField(max_length=500, blank=True)
    source = models.CharField(max_length=16, choices=DatasetSource.choices)
    key = models.CharField(max_length=300, unique=True, help_text="The object's key in the store")
    records = models.PositiveIntegerField()
    train_records = models.PositiveIntegerField()
    heldout_records = models.PositiveIntegerField()
    heldout_fraction = models.FloatField(
        validators=[MinValueValidator(0.0), MaxValueValidator(0.9)],
        help_text="Share of records held out of training, for evaluations",
    )
    seed = models.BigIntegerField(help_text="The seed of the train/held-out split")
    bytes = models.PositiveBigIntegerField(help_text="Compressed size")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the stored object")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name", "version"], name="dataset_name_version"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Evaluation(models.Model):
    """A dataset (or one of its parts) run through deployments of the organisation and scored.

    Deployments are held by name, as the gateway resolves them, so results outlive a deleted deployment.
    `prices` is what each deployment cost per hour when the evaluation was created ({name: {"hourly_usd",
    "replicas"}}). The status moves only by conditional updates (learning.evaluations.move), each with an
    event; `lease_until` is the running worker's claim, renewed while it works, so a killed worker's
    evaluation is taken over once the lease lapses."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="evaluations")
    name = models.CharField(max_length=80)
    dataset = models.ForeignKey(Dataset, on_delete=models.RESTRICT, related_name="evaluations")
    part = models.CharField(max_length=16, choices=DatasetPart.choices, default=DatasetPart.HELDOUT)
    deployments = models.JSONField(help_text="Names of the deployments that answer")
    scorers = models.JSONField(help_text="The scorers and their options (learning.scorers)")
    max_tokens = models.PositiveIntegerField(default=256)
    temperature = models.FloatField(default=0.0)
    concurrency = models.PositiveSmallIntegerField(default=4)
    prices = models.JSONField(default=dict, blank=True)
    total_items = models.PositiveIntegerField(help_text="Records of the part times deployments")
    status = models.CharField(
        max_length=16, choices=EvaluationStatus.choices, default=EvaluationStatus.PENDING
    )
    status_message = models.TextField(blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "lease_until"], name="evaluation_status_lease")]

    def __str__(self) -> str:
        return self.name


class EvaluationEvent(models.Model):
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=EvaluationStatus.choices)
    message = models.TextField()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class EvaluationItem(models.Model):
    """One record answered by one deployment, and its scores. Written once: the unique constraint makes
    a second write of the same item (a resumed run) a no-op, so nothing is counted twice."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="items")
    deployment = models.CharField(max_length=40)
    item_id = models.CharField(max_length=20, help_text="The dataset record's id")
    started_at = models.DateTimeField()
    latency_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField()
    error = models.TextField(blank=True)
    answer = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    scoring_tokens = models.PositiveIntegerField(default=0, help_text="Tokens the judge and embeddings spent")
    scores = models.JSONField(default=dict, help_text="{scorer: score, or null when it could not score}")
    notes = models.JSONField(default=dict, help_text="{scorer: the judge's reason, or why there is no score}")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["item_id", "deployment"]
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "deployment", "item_id"], name="evaluation_item_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment} on item {self.item_id}"


# --- Prompt routers -----------------------------------------------------------------------------------------


class RouterMode(models.TextChoices):
    ACTIVE = "active", "Active: the chosen candidate answers"
    SHADOW = "shadow", "Shadow: the fallback answers; the decision is only recorded"


class PredictorKind(models.TextChoices):
    NGRAM = "ngram", "Word n-grams, linear (no model call)"
    SEMANTIC = "semantic", "Prompt embedding, nearest neighbours"


class TrainingStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class SampleStatus(models.TextChoices):
    PENDING = "pending", "Waiting for the judge"
    SCORED = "scored", "Scored"
    FAILED = "failed", "Could not be scored"


class Router(models.Model):
    """One callable name over two or more deployments of the organisation (learning.routing).

    `candidates` is a list of {"deployment": name, "cost_per_1k_tokens": USD or null}: null means the
    cost is computed (`measured_costs`, from the instance type's hourly price × replicas and the
    throughput an evaluation measured). Deployments are held by name, as the gateway resolves them. The
    name must not be a deployment's name of the organisation (learning.router_service checks it)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="routers")
    name = models.CharField(max_length=40)
    description = models.CharField(max_length=500, blank=True)
    candidates = models.JSONField(help_text='[{"deployment": name, "cost_per_1k_tokens": USD or null}]')
    fallback = models.CharField(max_length=40, help_text="The candidate that answers when unsure")
    quality_difference = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="τ: how much worse than the fallback a cheaper candidate may be predicted, 0 to 1",
    )
    mode = models.CharField(max_length=8, choices=RouterMode.choices, default=RouterMode.SHADOW)
    active_version = models.ForeignKey(
        "RouterVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    embedding_deployment = models.CharField(
        max_length=40, blank=True, help_text="The deployment that embeds prompts for the semantic predictor"
    )
    shadow_rate = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of calls whose other candidates are shadow-called, 0 to 1",
    )
    shadow_tokens_per_day = models.PositiveIntegerField(
        default=0, help_text="Tokens shadow calls may spend per day; 0 turns shadow calls off"
    )
    judge_deployment = models.CharField(
        max_length=40, blank=True, help_text="The deployment that judges shadow-call answers"
    )
    judge_rubric = models.TextField(blank=True, help_text="The judge's rubric; empty: the default one")
    measured_costs = models.JSONField(
        default=dict, blank=True, help_text="{deployment: USD per 1,000 tokens} measured by evaluations"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="router_name_per_organization"),
            models.CheckConstraint(
                condition=models.Q(quality_difference__gte=0) & models.Q(quality_difference__lte=1),
                name="router_quality_difference_0_to_1",
            ),
            models.CheckConstraint(
                condition=models.Q(shadow_rate__gte=0) & models.Q(shadow_rate__lte=1),
                name="router_shadow_rate_0_to_1",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class RouterTraining(models.Model):
    """One training of a router from an evaluation of its candidates (learning.router_training), a row
    with a status, a sentence and progress like an evaluation. Re-running it is harmless: it writes at
    most one version per predictor kind (unique per training and kind)."""

    router = models.ForeignKey(Router, on_delete=models.CASCADE, related_name="trainings")
    evaluation = models.ForeignKey(
        Evaluation, null=True, blank=True, on_delete=models.SET_NULL, related_name="router_trainings"
    )
    scorer = models.CharField(max_length=40, help_text="The evaluation's scorer whose scores are targets")
    status = models.CharField(max_length=16, choices=TrainingStatus.choices, default=TrainingStatus.PENDING)
    status_message = models.TextField(blank=True)
    progress = models.FloatField(default=0.0, help_text="0 to 1")
    lease_until = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Training of {self.router} ({self.status})"


class RouterVersion(models.Model):
    """A trained predictor of a router: its arrays in the object store (`key`, NumPy's .npz without
    pickles), and the report measured on the held-out split. Never edited once written."""

    router = models.ForeignKey(Router, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=PredictorKind.choices)
    candidates = models.JSONField(help_text="The deployment names the predictor scores, in its order")
    key = models.CharField(max_length=300, help_text="The predictor's object in the store")
    bytes = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    report = models.JSONField(default=dict, help_text="Held-out figures (learning.router_report)")
    training = models.ForeignKey(
        RouterTraining, null=True, blank=True, on_delete=models.SET_NULL, related_name="versions"
    )
    evaluation = models.ForeignKey(
        Evaluation, null=True, blank=True, on_delete=models.SET_NULL, related_name="router_versions"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["router", "version"], name="router_version_once"),
            models.UniqueConstraint(fields=["training", "kind"], name="router_version_per_training_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.router} v{self.version} ({self.kind})"


class RouterSample(models.Model):
    """The answers of one shadow-called request (the served one among them), judged into targets:
    `scores` maps each deployment to its normalised score 0..1 (null: could not be scored)."""

    router = models.ForeignKey(Router, on_delete=models.CASCADE, related_name="samples")
    request_id = models.CharField(max_length=64)
    prompt = models.TextField()
    answers = models.JSONField(
        help_text="{deployment: {text, prompt_tokens, completion_tokens, latency_ms, status}}"
    )
    scores = models.JSONField(default=dict, blank=True)
    notes = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=SampleStatus.choices, default=SampleStatus.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["router", "request_id"], name="router_sample_once"),
        ]

    def __str__(self) -> str:
        return f"{self.router} sample {self.request_id}"


class Feedback(models.Model):
    """An app's rating of one answer (by the gateway's request id), 0 (useless) to 1 (perfect). One per
    request: a later post replaces the score and text. `deployment` is who answered (from the usage
    record), so a rating can be a training target for that deployment."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="feedback")
    request_id = models.CharField(max_length=64)
    score = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    text = models.TextField(blank=True)
    deployment = models.CharField(max_length=40, blank=True)
    router = models.CharField(max_length=40, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        verbose_name_plural = "feedback"
        constraints = [
            models.UniqueConstraint(fields=["organization", "request_id"], name="feedback_once_per_request"),
            models.CheckConstraint(
                condition=models.Q(score__gte=0) & models.Q(score__lte=1), name="feedback_score_0_to_1"
            ),
        ]

    def __str__(self) -> str:
        return f"Feedback {self.score} on {self.request_id}"


class Guardrail(models.Model):
    """A policy for the text going into and out of models (learning.guardrails). `draft` is the
    configuration people edit; publishing freezes it as the next numbered GuardrailVersion, which is
    what callers apply. The configuration's shape is checked by learning.guardrails.service."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="guardrails")
    name = models.CharField(max_length=40)
    description = models.CharField(max_length=500, blank=True)
    draft = models.JSONField(default=dict, help_text="The configuration being edited (not applied yet)")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="guardrail_name_per_organization"),
        ]

    def __str__(self) -> str:
        return self.name


class GuardrailVersion(models.Model):
    """One published configuration of a guardrail; never changed once written. `topic_vectors` holds
    the embeddings of each denied topic's examples, in order, made at publishing time by the
    configuration's embeddings deployment."""

    guardrail = models.ForeignKey(Guardrail, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    config = models.JSONField()
    topic_vectors = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["guardrail", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["guardrail", "version"], name="guardrail_version_once"),
        ]

    def __str__(self) -> str:
        return f"{self.guardrail.name} v{self.version}"


class GuardrailAttachment(models.Model):
    """A guardrail applied to every call through one deployment, router or API key of its organisation
    (exactly one of the three). `version` null: the latest published version, whichever it is when the
    call comes; a number: that version, pinned. A call is checked by every guardrail attached to the
    key it uses, the router it calls and the deployment that answers (serving.gateway.guardrails)."""

    guardrail = models.ForeignKey(Guardrail, on_delete=models.CASCADE, related_name="attachments")
    version = models.PositiveIntegerField(null=True, blank=True, help_text="Null: the latest published")
    deployment = models.ForeignKey(
        "serving.Deployment", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    router = models.ForeignKey(Router, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["guardrail", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(deployment__isnull=False, router__isnull=True, api_key__isnull=True)
                    | models.Q(deployment__isnull=True, router__isnull=False, api_key__isnull=True)
                    | models.Q(deployment__isnull=True, router__isnull=True, api_key__isnull=False)
                ),
                name="guardrail_attached_to_one_thing",
            ),
            models.UniqueConstraint(fields=["guardrail", "deployment"], name="guardrail_once_per_deployment"),
            models.UniqueConstraint(fields=["guardrail", "router"], name="guardrail_once_per_router"),
            models.UniqueConstraint(fields=["guardrail", "api_key"], name="guardrail_once_per_api_key"),
        ]

    def __str__(self) -> str:
        return f"{self.guardrail} on {self.deployment or self.router or self.api_key}"


class GuardrailIntervention(models.Model):
    """One rule of a guardrail that acted on one call at the gateway (masked, blocked or reported
    something), written after the answer: what the guardrail's page charts over time. The matched text
    itself is never kept (it is the personal data the rule was there to keep out)."""

    guardrail = models.ForeignKey(Guardrail, on_delete=models.CASCADE, related_name="interventions")
    version = models.PositiveIntegerField()
    request_id = models.CharField(max_length=64, db_index=True)
    deployment_name = models.CharField(max_length=40, blank=True)
    direction = models.CharField(max_length=6, help_text="input | output")
    kind = models.CharField(
        max_length=20, help_text="personal_data | word | profanity | prompt_attack | topic"
    )
    name = models.CharField(max_length=100, help_text="The entity type, word, attack or topic")
    action = models.CharField(max_length=8, help_text="masked | blocked | reported")
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["guardrail", "created_at"], name="intervention_guardrail_time")]

    def __str__(self) -> str:
        return f"{self.guardrail_id} {self.direction} {self.kind} {self.action}"


# --- Tuning jobs (distillation and fine-tuning) -------------------------------------------------------------


class TuningKind(models.TextChoices):
    DISTILLATION = "distillation", "Distillation: the student learns a teacher deployment's answers"
    FINE_TUNING = "fine-tuning", "Fine-tuning: the student learns the dataset's reference answers"


class TuningStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    GENERATING = "generating", "Teacher answering"
    TRAINING = "training", "Training"
    EVALUATING = "evaluating", "Evaluating"
    REGISTERING = "registering", "Registering"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class TuningJob(models.Model):
    """A LoRA student made from a dataset (learning.tuning): a distillation job has a teacher deployment
    answer the dataset's prompts first; a fine-tuning job learns the dataset's reference answers.

    The status is the step the job is at (QUEUED → GENERATING → TRAINING → EVALUATING → REGISTERING →
    SUCCEEDED, or FAILED / CANCELLED from any step before), moved only by conditional updates with an
    event each; `lease_until` is the running worker's claim, as for evaluations. Each step leaves what it
    made (teacher answers as TuningAnswer rows, the adapter in `work_dir`, `evaluation`, `custom_model`),
    so a resumed job redoes nothing finished. `name` is the name the student is registered under."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="tuning_jobs")
    name = models.CharField(max_length=40, help_text="The custom model the student is registered as")
    kind = models.CharField(max_length=16, choices=TuningKind.choices)
    teacher_deployment = models.CharField(
        max_length=40, blank=True, help_text="The deployment that answers (distillation), held by name"
    )
    teacher_instructions = models.TextField(
        blank=True, help_text="A system prompt the teacher is given and the student learns to do without"
    )
    student_base = models.ForeignKey(
        "catalog.ModelCard", on_delete=models.PROTECT, related_name="tuning_jobs"
    )
    dataset = models.ForeignKey(Dataset, on_delete=models.RESTRICT, related_name="tuning_jobs")
    hyperparameters = models.JSONField(help_text="A whole training spec (learning.training.spec)")
    max_tokens = models.PositiveIntegerField(default=256, help_text="Longest teacher and student answer")
    scorers = models.JSONField(
        default=list,
        blank=True,
        help_text="Evaluation scorers the held-out answers get too (learning.scorers)",
    )
    concurrency = models.PositiveSmallIntegerField(default=4, help_text="Teacher calls at once")
    status = models.CharField(max_length=16, choices=TuningStatus.choices, default=TuningStatus.QUEUED)
    status_message = models.TextField(blank=True)
    failure_reason = models.CharField(
        max_length=20, blank=True, help_text="bad_data | out_of_memory | teacher | bad_run | error"
    )
    progress = models.JSONField(default=dict, blank=True, help_text="{done, total} of the current step")
    loss_points = models.JSONField(default=list, blank=True, help_text="[[step, loss], …] of the training")
    total_steps = models.PositiveIntegerField(default=0)
    work_dir = models.CharField(max_length=500, blank=True, help_text="The training run's folder")
    evaluation = models.JSONField(
        default=dict, blank=True, help_text="Held-out scores (learning.tuning_eval)"
    )
    custom_model = models.ForeignKey(
        "catalog.CustomModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="tuning_jobs"
    )
    # Where it trains: none, on this machine's CPUs; a GPU instance type, as a Job on the cluster, holding
    # that instance's GPUs of the organisation's quota until the Job is done (reserved_gpus back to 0).
    instance_type = models.ForeignKey(
        "catalog.InstanceType", null=True, blank=True, on_delete=models.PROTECT, related_name="tuning_jobs"
    )
    reserved_gpus = models.PositiveIntegerField(default=0)
    gpu_model = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "lease_until"], name="tuning_job_status_lease")]

    def __str__(self) -> str:
        return self.name

    @property
    def on_cluster(self) -> bool:
        return self.instance_type_id is not None


class TuningJobEvent(models.Model):
    job = models.ForeignKey(TuningJob, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=TuningStatus.choices)
    message = models.TextField()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class TuningAnswer(models.Model):
    """The teacher's answer to one dataset record. Written once (unique per job and record), so a
    resumed generation asks only for what is missing and counts nothing twice."""

    job = models.ForeignKey(TuningJob, on_delete=models.CASCADE, related_name="answers")
    record_id = models.CharField(max_length=20)
    part = models.CharField(max_length=16, choices=DatasetPart.choices)
    status_code = models.PositiveSmallIntegerField()
    error = models.TextField(blank=True)
    answer = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(
        default=0, help_text="How long the call took (the teacher's cost)"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "record_id"]
        constraints = [models.UniqueConstraint(fields=["job", "record_id"], name="tuning_answer_once")]

    def __str__(self) -> str:
        return f"Answer to {self.record_id} of job {self.job_id}"
