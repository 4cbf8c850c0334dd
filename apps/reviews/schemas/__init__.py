"""ninja In/Out schemas of the reviews app: `approvals` (Part A) and `queues` (Part B)."""
