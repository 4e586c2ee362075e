"""The browser side: `imgembed serve` (Flask) and the self-contained HTML pages."""
