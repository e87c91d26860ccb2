"""The clients: the Python package, its CLI and examples, the Node.js and independent clients."""
