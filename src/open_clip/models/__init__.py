"""Native model towers of open_clip: basic layers, attention blocks, the vision transformer, the
text transformer and the modified ResNet. Import from the submodules; this package stays empty."""
