"""Queue and task names, and which queue each task goes to. Plain names, no Celery import: the
API publishes by name and never loads Celery or the code the workers run."""

QUEUE_GPU = "gpu"  # inference: one worker process per GPU, concurrency 1, prefetch 1
QUEUE_IO = "io"  # GitHub, Pages and other network-bound steps
QUEUE_CALLBACKS = "callbacks"  # webhook and evaluation-callback deliveries
QUEUES = (QUEUE_GPU, QUEUE_IO, QUEUE_CALLBACKS)

TASK_GENERATE = "kiln.generate"
TASK_CHAT = "kiln.chat"
TASK_DELIVER = "kiln.deliver_webhook"
TASK_APP_GENERATE = "kiln.app.generate"  # an app build's first step: the LLM writes the files
TASK_APP_PUBLISH = "kiln.app.publish"  # its second: commit, deploy, wait, notify
TASK_COMPOSE = "kiln.compose"
# Model pulls and deletes run on `gpu`, where the backend a GPU worker serves from is: the one
# worker that takes the job pulls into (or deletes from) its own backend. GPU workers of one
# host share that host's Ollama, so a host needs the job once; see README, "Models".
TASK_MODEL_PULL = "kiln.model.pull"
TASK_MODEL_DELETE = "kiln.model.delete"

TASK_FOR_KIND = {
    "generate": TASK_GENERATE,
    "chat": TASK_CHAT,
    "app": TASK_APP_GENERATE,
    "compose": TASK_COMPOSE,
    "model_pull": TASK_MODEL_PULL,
    "model_delete": TASK_MODEL_DELETE,
}
"""Which task starts each job kind."""

QUEUE_FOR_TASK = {
    TASK_GENERATE: QUEUE_GPU,
    TASK_CHAT: QUEUE_GPU,
    TASK_DELIVER: QUEUE_CALLBACKS,
    TASK_APP_GENERATE: QUEUE_GPU,
    TASK_APP_PUBLISH: QUEUE_IO,
    TASK_COMPOSE: QUEUE_GPU,
    TASK_MODEL_PULL: QUEUE_GPU,
    TASK_MODEL_DELETE: QUEUE_GPU,
}
