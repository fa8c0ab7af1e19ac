"""The invoke API's routes. Included by the platform's URLconf, or served alone when GATEWAY_ONLY=True."""

from django.urls import path

from serving.gateway import audio_api, bedrock_api, guardrail_api, metrics, openai_api

urlpatterns = [
    path("v1/chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("v1/completions", openai_api.completions, name="openai-completions"),
    path("v1/embeddings", openai_api.embeddings, name="openai-embeddings"),
    path("v1/responses", openai_api.responses, name="openai-responses"),
    path("v1/rerank", openai_api.rerank, name="openai-rerank"),
    path("v1/score", openai_api.score, name="openai-score"),
    path("v1/audio/transcriptions", audio_api.transcriptions, name="openai-audio-transcriptions"),
    path("v1/audio/translations", audio_api.translations, name="openai-audio-translations"),
    path("v1/models", openai_api.models, name="openai-models"),
    path("model/<str:model_id>/converse", bedrock_api.converse, name="bedrock-converse"),
    path("model/<str:model_id>/converse-stream", bedrock_api.converse_stream, name="bedrock-converse-stream"),
    path("model/<str:model_id>/invoke", bedrock_api.invoke, name="bedrock-invoke"),
    path(
        "model/<str:model_id>/invoke-with-response-stream",
        bedrock_api.invoke_stream,
        name="bedrock-invoke-stream",
    ),
    path(
        "guardrail/<str:guardrail_id>/version/<str:version>/apply",
        guardrail_api.apply,
        name="bedrock-apply-guardrail",
    ),
    path("metrics", metrics.metrics_view, name="metrics"),
]
