"""What every route shares: the common request schemas, the constraint fields, their conversion to engine settings, limits, rendering."""
