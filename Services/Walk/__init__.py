"""The seed's Walk task service (StateMachine sample)."""
