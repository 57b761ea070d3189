"""The seed's Stand task service (StateMachine sample)."""
