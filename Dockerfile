# syntax=docker/dockerfile:1
#
# Giggityflix edge: a multi-stage image. The builder installs the package with the pins of
# constraints.txt into a virtual environment; the runtime stage is slim Python with that environment
# and nothing else (no compiler, no pip), running as an unprivileged user. See deploy/README.md.
#
#   docker build -t giggityflix-edge .
#   docker run --rm --stop-timeout 35 -p 50051:50051 -p 8080:8080 \
#       -e KAFKA_BOOTSTRAP_SERVERS=kafka:9092 -e EDGE_ID=edge-1 \
#       -v "$PWD/tls:/etc/giggityflix-edge/tls:ro" -v "$PWD/peer-token:/etc/giggityflix-edge/peer-token:ro" \
#       -e PEER_TOKEN_HMAC_SECRET_PATH=/etc/giggityflix-edge/peer-token/secret giggityflix-edge
#
# `docker stop` waits 10 s by default before SIGKILL, less than the drain (SHUTDOWN_DEADLINE_SEC, 25 s):
# give it --stop-timeout 35 (compose: stop_grace_period: 35s). A Dockerfile cannot set that.

# Both stages must use the same Python: the virtual environment points at /usr/local/bin/python3.11.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/giggityflix-edge
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY edge ./edge
# A regular (non-editable) install; bytecode is compiled here, since the runtime's root filesystem may
# be read-only. The installers are removed afterwards: the runtime installs nothing.
RUN /opt/giggityflix-edge/bin/pip install -c constraints.txt . \
 && /opt/giggityflix-edge/bin/pip uninstall --yes pip setuptools

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="giggityflix-edge" \
      org.opencontainers.image.description="Giggityflix edge gateway: gRPC peer streams joined to Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 edge \
 && useradd --system --uid 10001 --gid edge --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin edge
COPY --from=builder /opt/giggityflix-edge /opt/giggityflix-edge
COPY deploy/docker/healthcheck.py /opt/giggityflix-edge/healthcheck.py
# The TLS certificate and key are mounted here (Kubernetes: a kubernetes.io/tls Secret).
ENV PATH=/opt/giggityflix-edge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRPC_CERT_PATH=/etc/giggityflix-edge/tls/tls.crt \
    GRPC_KEY_PATH=/etc/giggityflix-edge/tls/tls.key
WORKDIR /opt/giggityflix-edge
USER 10001:10001
# gRPC (GRPC_SERVER_ADDRESS) and the ops endpoint: /healthz, /readyz, /metrics (HEALTH_HTTP_ADDRESS).
EXPOSE 50051 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "/opt/giggityflix-edge/healthcheck.py"]
# SIGTERM starts the drain (a second one exits at once); the process exits within SHUTDOWN_DEADLINE_SEC.
STOPSIGNAL SIGTERM
ENTRYPOINT ["giggityflix-edge", "run"]
