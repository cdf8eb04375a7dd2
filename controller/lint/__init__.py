"""Fleet lint: audit checks over the inventory (pure; the queries are in controller.stores)."""
