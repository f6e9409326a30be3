"""Operations against servers: the Medplum and Metriport HTTP clients (with one retry policy) and the commands
that use them on a real or local Medplum: deploy, replay, enroll, document-urls, runs."""
