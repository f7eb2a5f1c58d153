#!/usr/bin/env python3
"""Print every GraphQL document the installed LiteralAI SDK can send, as
JSON: [{"source": "...", "query": "..."}].

Reads the SDK's own module-level documents (literalai/api/helpers/*.py) and
calls its two builders of batched documents (AddStep, CreateScores), so a
new operation in a new SDK release shows up here without editing this file.
Run it with the interpreter (and PYTHONPATH) of the SDK under test.
"""

import importlib
import json
import pkgutil

import literalai
import literalai.api.helpers as helpers
from literalai.api.helpers import gql, score_helpers


def documents():
    out = []
    for mod in pkgutil.iter_modules(helpers.__path__):
        m = importlib.import_module(f"literalai.api.helpers.{mod.name}")
        for name, value in vars(m).items():
            if isinstance(value, str) and value.strip().split(None, 1)[:1] in (["query"], ["mutation"]):
                out.append({"source": f"{mod.name}.{name}", "query": value})
    out.append({"source": "gql.steps_query_builder", "query": gql.steps_query_builder([{"id": "a"}, {"id": "b"}])})
    out.append({
        "source": "score_helpers.create_scores_query_builder",
        "query": score_helpers.create_scores_query_builder(
            [{"name": "n", "type": "HUMAN", "value": 1.0}, {"name": "m", "type": "AI", "value": 0.5}]
        ),
    })
    return out


if __name__ == "__main__":
    print(json.dumps({"version": getattr(literalai, "__version__", None), "file": literalai.__file__,
                      "documents": documents()}))
