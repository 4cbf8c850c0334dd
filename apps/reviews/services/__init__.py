"""Every write of the reviews app: `approvals` (Part A) and `queues` (Part B)."""
