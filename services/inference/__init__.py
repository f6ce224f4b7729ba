"""The inference service: deployments, classify APIs (native, OpenAI- and Mistral-compatible), the playground,
the request log and usage events."""
