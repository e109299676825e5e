"""The Optuna runtime every command shares: storage URLs, open and resume studies, the one trial loop
(ask/tell, slots, heartbeats, retries, interrupts), workers, status and synthetic objectives."""
