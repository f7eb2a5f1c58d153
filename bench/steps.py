"""Request bodies as the LiteralAI SDK (literalai, as pinned by chainlit
2.12.0) sends them: the `AddStep` mutation text is rebuilt the way
`literalai.api.helpers.gql.steps_query_builder` builds it, with the variables a
Chainlit assistant message produces. One step is about 1.5 KB on the wire.
"""

import json


def _decls(i):
    return f"""$id_{i}: String!
        $threadId_{i}: String
        $rootRunId_{i}: String
        $type_{i}: StepType
        $startTime_{i}: DateTime
        $endTime_{i}: DateTime
        $error_{i}: String
        $input_{i}: Json
        $output_{i}: Json
        $metadata_{i}: Json
        $parentId_{i}: String
        $name_{i}: String
        $tags_{i}: [String!]
        $generation_{i}: GenerationPayloadInput
        $scores_{i}: [ScorePayloadInput!]
        $attachments_{i}: [AttachmentPayloadInput!]
        """


def _field(i):
    return f"""
      step{i}: ingestStep(
        id: $id_{i}
        threadId: $threadId_{i}
        rootRunId: $rootRunId_{i}
        startTime: $startTime_{i}
        endTime: $endTime_{i}
        type: $type_{i}
        error: $error_{i}
        input: $input_{i}
        output: $output_{i}
        metadata: $metadata_{i}
        parentId: $parentId_{i}
        name: $name_{i}
        tags: $tags_{i}
        generation: $generation_{i}
        scores: $scores_{i}
        attachments: $attachments_{i}
      ) {{
        ok
        message
      }}
"""


def add_step_query(n):
    decls = "".join(_decls(i) for i in range(n))
    fields = "".join(_field(i) for i in range(n))
    return f"""
    mutation AddStep({decls}) {{
      {fields}
    }}
    """


def add_step_body(step_id, content="The capital of France is Paris.", thread_id="thread-bench"):
    variables = {
        "id_0": step_id,
        "threadId_0": thread_id,
        "type_0": "assistant_message",
        "startTime_0": "2026-11-26T12:00:00.000Z",
        "endTime_0": "2026-11-26T12:00:01.250Z",
        "output_0": {"content": content},
        "metadata_0": {},
        "name_0": "Assistant",
    }
    return json.dumps({"query": add_step_query(1), "variables": variables})


if __name__ == "__main__":
    print(add_step_body("step-000001"))
