"""The Resend-compatible HTTP sending API: keys, rate limits, the aiohttp app."""
