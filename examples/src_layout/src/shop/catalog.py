"""What the shop sells, in cents."""

PRODUCTS = [("coffee", 350), ("bread", 225), ("cheese", 600)]
