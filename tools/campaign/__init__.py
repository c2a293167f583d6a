"""The CIFAR-10 campaign behind results/cifar10_nano/, one idea per module; tools/cifar_campaign.py is its command
line and its docstring says what the campaign runs and why (the module list is there too)."""
