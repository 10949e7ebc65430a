"""Event feeds besides StorageService: sources that push events to the scheduler.

``log_entries`` reads an existing PostgreSQL table filled by syslog-ng (the original AI
service's schema).
"""
