"""The console's shared shell: base layout, styles and navigation that every service's pages extend."""
