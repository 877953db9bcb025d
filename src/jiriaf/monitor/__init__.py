"""Monitoring: Prometheus scrape configuration for JRMs and pods, and a local Prometheus."""
