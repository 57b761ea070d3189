"""The seed's DrinkCoffee task service (StateMachine sample)."""
