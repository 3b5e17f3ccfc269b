# syntax=docker/dockerfile:1
# One image for every AI Spine process: the command picks which one runs.
#
#   docker build -t ai-spine .
#   docker run --rm ai-spine spine-orchestrator        # any console script of the workspace
#   docker run --rm -p 8000:8000 ai-spine              # the default: spine-gateway
#
# Stage "build" resolves nothing: it installs exactly uv.lock (--frozen) into /app/.venv,
# workspace packages as regular wheels (--no-editable), so the runtime stage needs the
# virtualenv and the flow files only, not the sources, uv or pip caches.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The same uv as scripts/bootstrap.sh, from PyPI.
ARG UV_VERSION=0.13.9
RUN python -m pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# Dependencies first, from the lock and the members' metadata only, so a source change does
# not reinstall them. Every workspace member's pyproject.toml is listed (tests/deploy checks).
COPY pyproject.toml uv.lock ./
COPY libs/contracts/pyproject.toml libs/contracts/
COPY libs/kafkakit/pyproject.toml libs/kafkakit/
COPY libs/servicekit/pyproject.toml libs/servicekit/
COPY libs/flows/pyproject.toml libs/flows/
COPY libs/agent-sdk/pyproject.toml libs/agent-sdk/
COPY libs/admin/pyproject.toml libs/admin/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/orchestrator/pyproject.toml services/orchestrator/
COPY services/registry/pyproject.toml services/registry/
COPY services/auth/pyproject.toml services/auth/
COPY services/metrics/pyproject.toml services/metrics/
COPY services/console/pyproject.toml services/console/
COPY agents/pyproject.toml agents/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-install-workspace

# Then the workspace itself.
COPY libs libs
COPY services services
COPY agents agents
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable


FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ai-spine" \
      org.opencontainers.image.description="AI Spine services and demo agents; the command picks one"
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
# /var/lib/spine is where the service user keeps state: the relay's or an agent's signing
# key, on a volume that takes this ownership when compose mounts a new one over it;
# /var/lib/spine-admin/<id> are the mount points where compose's init job (spine-admin)
# writes those keys, one volume each.
RUN groupadd --system --gid 10001 spine \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin spine \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/spine \
      /var/lib/spine-admin /var/lib/spine-admin/relay /var/lib/spine-admin/echo \
      /var/lib/spine-admin/zoe /var/lib/spine-admin/eddie
WORKDIR /app
# Owned by root and read-only for the service user: the code cannot be changed at run time.
COPY --from=build /app/.venv /app/.venv
COPY flows /app/flows
COPY --chmod=0755 deploy/k8s/probes/kafka_connected.py /usr/local/bin/spine-kafka-connected
ENV PATH=/app/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLOWS_DIR=/app/flows \
    API_HOST=0.0.0.0 \
    PORT=8000
USER 10001:10001
EXPOSE 8000
CMD ["spine-gateway"]
