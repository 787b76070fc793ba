".

system	Be brief.

userTell a story.H