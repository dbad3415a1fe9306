"""headway."""
