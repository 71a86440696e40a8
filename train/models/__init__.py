"""Model code (plain nn.Modules, free of distributed logic)."""
