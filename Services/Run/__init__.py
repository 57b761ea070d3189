"""The seed's Run task service (StateMachine sample)."""
