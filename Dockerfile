# syntax=docker/dockerfile:1
# One image for every process of the platform; the container's command picks one:
#   entrypoint web | gateway | worker | beat | migrate      (deploy/entrypoint.sh)
#   entrypoint alive worker|beat                            (their liveness probe)
# The Helm chart in deploy/helm/marketplace runs each as its own Deployment (migrate as a Job).

# Pinned by tag, the same in both stages (the venv's python is a link to the base image's).
ARG PYTHON_IMAGE=python:3.11-slim
# The trainer (below) builds on the engine image deployments run (serving/spec.py's ENGINE_IMAGE).
ARG ENGINE_IMAGE=vllm/vllm-openai:v0.33.0

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, read from pyproject.toml (with the optional extras named in EXTRAS, separated by
# spaces: `presidio` gives guardrails Microsoft Presidio's recognizers): this layer is rebuilt only when
# they change, not with every source edit.
ARG EXTRAS="presidio"
COPY pyproject.toml ./
RUN EXTRAS="${EXTRAS}" python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in os.environ['EXTRAS'].split() for r in p['optional-dependencies'][e]]))" \
        > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt

COPY README.md ./
COPY marketplace/ marketplace/
COPY serving/ serving/
COPY learning/ learning/
COPY static/ static/
# A regular install (not editable): the final image needs no source tree.
RUN /opt/venv/bin/pip install --no-deps .

# Static files are collected here, from the source tree, because the settings look for the project's
# root static/ folder beside the packages (BASE_DIR/static): in the source tree it is there, in
# site-packages it is not. The settings need these three variables to load; nothing connects to them.
RUN SECRET_KEY=collectstatic-only \
    DATABASE_URL=postgres://collectstatic/none \
    REDIS_URL=redis://collectstatic:6379/0 \
    DJANGO_SETTINGS_MODULE=marketplace.settings \
    STATIC_ROOT=/app/static \
    /opt/venv/bin/python -m django collectstatic --noinput


# The trainer of tuning jobs on GPU instance types, built apart: `docker build --target trainer -t
# model-marketplace-trainer:v0.33.0 .` (TRAINING_IMAGE). The engine image brings torch, transformers and
# CUDA; the LoRA trainer's libraries are those the CPU trainer is checked with (serving/local/engine_env.py);
# the trainer's files need nothing else of the platform. A training Job runs its ENTRYPOINT.
FROM ${ENGINE_IMAGE} AS trainer
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN python3 -m pip install peft==0.21.2 trl==1.16.0 datasets==5.2.0
WORKDIR /opt/marketplace
COPY learning/__init__.py learning/
COPY learning/training/__init__.py learning/training/cpu_trainer.py learning/training/cpu_generate.py \
     learning/training/job.py learning/training/
ENTRYPOINT ["python3", "-m", "learning.training.job"]


FROM ${PYTHON_IMAGE}
# A numeric user, so that Kubernetes' runAsNonRoot can verify it without a runAsUser.
RUN groupadd --system --gid 10001 marketplace \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin marketplace
# HOME=/tmp: /tmp is the one writable folder when the root filesystem is read-only (the chart mounts an
# emptyDir there), so libraries that write under $HOME write there too.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=marketplace.settings \
    STATIC_ROOT=/app/static \
    HOME=/tmp \
    PORT=8000
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/static /app/static
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/entrypoint
WORKDIR /app
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["entrypoint"]
CMD ["web"]
