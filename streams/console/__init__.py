"""The read-only web console (``riskmon console``): view (pure), render (HTML), server (aiohttp)."""
