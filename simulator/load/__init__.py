"""``cityneuron load``: an open-loop load generator that reconciles with the database afterwards."""
