Lily and Tom went to the park.j
 (