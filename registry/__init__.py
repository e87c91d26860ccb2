"""The national register of personal identification numbers and citizen identity cards."""
