"""The billing service: Meters, plans, quotas and Stripe."""
