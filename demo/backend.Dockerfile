# The LiteralAI-compatible test backend (tests/e2e/backend.py), for
# deploy/compose.yaml: stores steps, threads and users in memory.
FROM python:3.11-slim
RUN pip install --no-cache-dir 'graphql-core==3.2.*'
COPY tests/e2e/backend.py /backend.py
RUN useradd --uid 10001 backend
USER backend
EXPOSE 4000
CMD ["python", "/backend.py", "--port", "4000", "--control-port", "4001", "--host", "0.0.0.0"]
