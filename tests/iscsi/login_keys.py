"""Key lists real initiators send during login, shared by the login and
negotiation tests."""

# What libiscsi (lib/login.c) offers in its one operational-stage Login
# Request of a Normal session when no CHAP user is set, in its order.
LIBISCSI_NORMAL = [
    ("InitiatorName", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"),
    ("TargetName", "iqn.2024-01.org.uscst:disk1"),
    ("SessionType", "Normal"),
    ("HeaderDigest", "None,CRC32C"),
    ("DataDigest", "None"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "262144"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"),
    ("ErrorRecoveryLevel", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
    ("MaxConnections", "1"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
]

# What open-iscsi offers in the operational stage of a Discovery session.
OPEN_ISCSI_DISCOVERY_OP = [
    ("HeaderDigest", "None"), ("DataDigest", "None"), ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"), ("IFMarker", "No"), ("OFMarker", "No"),
    ("ErrorRecoveryLevel", "0"), ("MaxRecvDataSegmentLength", "32768"),
]
