# One image for every EdgeBot process; the command chooses the service.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 edgebot
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gen ./gen
COPY mesh ./mesh
COPY edgebot ./edgebot
COPY edge_agent ./edge_agent
COPY ingest_svc ./ingest_svc
COPY pipeline_svc ./pipeline_svc
COPY storage_svc ./storage_svc
COPY anomaly_svc ./anomaly_svc
RUN pip install --no-cache-dir . && mkdir -p /data && chown edgebot /data
USER edgebot
WORKDIR /data
ENTRYPOINT ["python", "-m"]
CMD ["edgebot", "--help"]
