"""all-MiniLM-L6-v2 with any attention: loading, the adapter, embeddings, texts and checks.

Shared by the tasks that run the pretrained model (its measurement code imports these); nothing
here imports a task.
"""
