# The agentmesh runtime and its ready agents: `mesh agent run agents.<name>:agent`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
RUN pip install . \
 && useradd --create-home --uid 10001 mesh
USER mesh

# docker-compose.yml gives each agent its command; this one lists what `mesh` can do.
CMD ["mesh", "--help"]
