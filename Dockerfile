# The image of the init-databases task: `nomad-pginit run` in a Nomad job.
#
#   docker build -t registry.example.com/nomad-pginit:0.1.0 .
#
# Stage 1 builds the wheels (this project's and its dependencies'); stage 2
# installs them without a compiler, a source tree or network access.

FROM python:3.11-slim AS builder

WORKDIR /src
COPY pyproject.toml README.md ./
COPY nomad_pginit ./nomad_pginit
RUN pip wheel --no-cache-dir --wheel-dir /wheels .


FROM python:3.11-slim

# No PGINIT_CONFIG here: the Nomad job sets it (/local/pginit.toml), and the
# standalone deployments name their file with CONFIG_PATH, which it would override.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 pginit \
    && useradd --system --uid 10001 --gid pginit --no-create-home --shell /usr/sbin/nologin pginit

# The wheels are bind-mounted from the builder, so none of them stays in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/nomad_pginit-*.whl

# Numeric, so that runtimes that check for a non-root user can tell without /etc/passwd.
USER 10001:10001

# Nomad's docker driver mounts the task directory at /local and the secrets at /secrets.
ENTRYPOINT ["nomad-pginit"]
CMD ["run"]
