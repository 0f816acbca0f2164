"""Model construction: timm and local architectures, preprocessing, weights loading, the audio front end."""
