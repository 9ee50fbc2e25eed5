"""Web search backends (SerpApi Google / Lens, JINA Reader, own fetch + trafilatura, OpenAI-compatible
summarizer). Modules register themselves when imported; `search.factory` imports them lazily."""
