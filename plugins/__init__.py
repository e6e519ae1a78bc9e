"""First-party plugins, installed as the package ``appliance_plugins``.

``defaults`` holds the built-in behaviour and is always registered; the
others are loaded by naming them in ``[plugins] modules``.
"""
