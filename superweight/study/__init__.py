"""The studies: experiments that combine the other wings (recovery after a lost super weight, prevention)."""
