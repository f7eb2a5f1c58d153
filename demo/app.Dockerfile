# The demo's Chainlit app (demo/app.py), for deploy/compose.yaml.
FROM python:3.11-slim
WORKDIR /app
COPY tests/e2e/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
COPY demo/app.py /app/app.py
COPY tests/e2e/sent_steps.py /app/sent_steps.py
RUN useradd --uid 10001 app && chown -R app /app
USER app
EXPOSE 8000
CMD ["chainlit", "run", "app.py", "--headless", "--host", "0.0.0.0", "--port", "8000"]
