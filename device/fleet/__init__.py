"""Many devices into one place: publishing a results log over MQTT, and collecting it into one database."""
