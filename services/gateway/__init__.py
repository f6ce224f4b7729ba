"""The gateway service: The console's shell and identity API (orgs, members, API keys); later webhooks and their deliveries."""
